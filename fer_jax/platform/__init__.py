"""What fer_jax needs from the machine it runs on: device placement (sharding), the allocator,
CPU facts, and the one-line run errors a person reads."""
