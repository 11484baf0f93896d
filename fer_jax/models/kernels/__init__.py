"""CPU convolution machinery: alternative convolution implementations (cpu_conv) and the per-layer
choice among them measured on this CPU (conv_choice)."""
