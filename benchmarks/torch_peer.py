"""B++ and its training step in PyTorch: the peer a GPU user would otherwise pick, for
benchmarks/accelerator.py.

The network is fer_jax's B++ (configs/b_pp.py, fer_jax/models/cnn.py): three blocks of two 3x3
'same' convs (64, 128, 256 filters), each conv -> ReLU -> BatchNorm, a 2x2 max-pool and dropout
(0.25, 0.30, 0.40) after each block, flatten, Dense 256 -> ReLU -> BatchNorm -> dropout 0.5, Dense
4 logits; Keras's BatchNorm (momentum 0.99, epsilon 1e-3) and initialisers (glorot-uniform kernels,
zero biases): 3,509,444 parameters, as fer_jax counts them. The step is B++'s too: on-device
augmentation (flip, rotation 0.05 turn, zoom 0.05, contrast 0.05; one affine resample with
reflection, as fer_jax.augment), label-smoothed (0.1) focal loss (gamma 2, alpha 0.25) in
float32, L2 1e-4 on the conv and hidden Dense kernels, Adam at a fixed 5e-4 (the schedule's
first value).

Run as PyTorch users run it fast: channels-last memory format, `torch.compile` of the step
function (forward, loss, backward and the optimiser update), bfloat16 autocast for --dtype=bfloat16
(parameters, optimiser state and BatchNorm statistics stay float32), fused Adam on CUDA. The
batch is on the device already (a fixed uint8 batch, as fer_jax's on-device data), so no input
pipeline is timed.

  python -m benchmarks.torch_peer [--batch=64] [--dtype=float32|bfloat16] [--steps=50]
      [--no-compile]

prints the device and one `RESULT {json}` line with images/s.
"""

import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SIZE, CLASSES = 48, 4


def keras_init(module):
  if isinstance(module, (nn.Conv2d, nn.Linear)):
    nn.init.xavier_uniform_(module.weight)
    nn.init.zeros_(module.bias)


class BPlusPlus(nn.Module):
  def __init__(self, widths=(64, 128, 256), dropouts=(0.25, 0.30, 0.40), dense=256):
    super().__init__()
    layers, channels = [], 1
    for width, rate in zip(widths, dropouts):
      for _ in range(2):
        layers += [
          nn.Conv2d(channels, width, 3, padding=1),
          nn.ReLU(),
          nn.BatchNorm2d(width, eps=1e-3, momentum=0.01),
        ]
        channels = width
      layers += [nn.MaxPool2d(2), nn.Dropout(rate)]
    side = SIZE // 2 ** len(widths)
    self.body = nn.Sequential(*layers)
    self.hidden = nn.Linear(channels * side * side, dense)
    self.head = nn.Sequential(
      nn.ReLU(), nn.BatchNorm1d(dense, eps=1e-3, momentum=0.01), nn.Dropout(0.5)
    )
    self.logits = nn.Linear(dense, CLASSES)
    self.apply(keras_init)

  def forward(self, x):
    # flattened in NHWC order, as Keras and fer_jax flatten
    x = self.body(x).permute(0, 2, 3, 1).flatten(1)
    return self.logits(self.head(self.hidden(x)))

  def l2_kernels(self):
    return [m.weight for m in self.modules() if isinstance(m, nn.Conv2d)] + [self.hidden.weight]


def augment(x, rotation=0.05, zoom=0.05, contrast=0.05):
  """Random flip, rotation and zoom in one affine resample (reflect fill), then contrast."""
  n = x.shape[0]
  angle = (torch.rand(n, device=x.device) * 2 - 1) * rotation * 2 * math.pi
  scale = 1 + (torch.rand(n, device=x.device) * 2 - 1) * zoom
  flip = torch.where(torch.rand(n, device=x.device) < 0.5, -1.0, 1.0)
  cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
  theta = torch.stack(
    [torch.stack([cos * flip, -sin, torch.zeros_like(cos)], -1),
     torch.stack([sin * flip, cos, torch.zeros_like(cos)], -1)],
    1,
  )  # fmt: skip
  grid = F.affine_grid(theta, list(x.shape), align_corners=False)
  x = F.grid_sample(x, grid, padding_mode="reflection", align_corners=False)
  factor = 1 + (torch.rand(n, 1, 1, 1, device=x.device) * 2 - 1) * contrast
  mean = x.mean(dim=(1, 2, 3), keepdim=True)
  return ((x - mean) * factor + mean).clamp(0, 1)


def focal_loss(logits, labels, gamma=2.0, alpha=0.25, smoothing=0.1):
  targets = F.one_hot(labels, CLASSES).float() * (1 - smoothing) + smoothing / CLASSES
  p = logits.float().softmax(-1).clamp(1e-7, 1 - 1e-7)
  return (targets * alpha * (1 - p) ** gamma * -p.log()).sum(-1).mean()


def make_step(model, optimizer, bf16, device_type, l2=1e-4):
  def step(images_u8, labels):
    x = augment(images_u8.float() / 255).contiguous(memory_format=torch.channels_last)
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
      logits = model(x)
    loss = focal_loss(logits, labels) + l2 * sum((w**2).sum() for w in model.l2_kernels())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()

  return step


def images_per_s(batch, dtype="float32", steps=50, compile_step=True, widths=(64, 128, 256)):
  """(images/s of the steady-state step, seconds of the first steps incl. compilation);
  `widths` other than B++'s only for smoke tests."""
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  torch.manual_seed(0)
  model = BPlusPlus(widths).to(device).to(memory_format=torch.channels_last).train()
  optimizer = torch.optim.Adam(model.parameters(), lr=5e-4, fused=device.type == "cuda")
  step = make_step(model, optimizer, dtype == "bfloat16", device.type)
  if compile_step:
    step = torch.compile(step)
  rng = np.random.default_rng(0)
  images = torch.as_tensor(rng.integers(0, 256, (batch, 1, SIZE, SIZE), dtype=np.uint8))
  images = images.to(device).contiguous(memory_format=torch.channels_last)
  labels = torch.as_tensor(np.arange(batch) % CLASSES).to(device)

  def run(n):
    for _ in range(n):
      loss = step(images, labels)
    loss.item()  # waits for the device

  start = time.perf_counter()
  run(3)  # compiles (and recompiles once Adam's step count becomes a tensor)
  first_s = time.perf_counter() - start
  start = time.perf_counter()
  run(steps)
  return batch * steps / (time.perf_counter() - start), first_s


def count_params(model):
  """As Keras and fer_jax count them: BatchNorm's moving statistics included."""
  buffers = sum(b.numel() for name, b in model.named_buffers() if "running" in name)
  return sum(p.numel() for p in model.parameters()) + buffers


def device_name():
  if torch.cuda.is_available():
    return f"cuda: {torch.cuda.get_device_name(0)}"
  return "cpu"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  parser.add_argument("--steps", type=int, default=50)
  parser.add_argument("--no-compile", dest="compile", action="store_false")
  parser.add_argument("--widths", default="64,128,256", help=argparse.SUPPRESS)  # smoke tests
  args = parser.parse_args()
  widths = tuple(int(w) for w in args.widths.split(","))
  rate, first_s = images_per_s(args.batch, args.dtype, args.steps, args.compile, widths)
  params = count_params(BPlusPlus(widths))
  print(f"torch {torch.__version__} on {device_name()}", flush=True)
  print(
    "RESULT "
    + json.dumps(
      {"images_per_s": rate, "first_s": first_s, "params": params, "compiled": args.compile}
    ),
    flush=True,
  )


if __name__ == "__main__":
  main()
