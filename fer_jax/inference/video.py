"""Videos for predict: every frame's faces scored, tracked and smoothed, one row per face per
frame, and optionally the annotated video.

Track ids come from scoring.Tracker: a face keeps the id of the track whose last box overlaps
its box most (IoU >= 0.3, greedy, best pairs first), so a face moving a little from frame to
frame keeps its id; a face unseen for more than 5 frames ends its track, and a face that comes
back later gets a new id.
"""

import numpy as np

from fer_jax.data import folders
from fer_jax.inference import scoring


def score_video(scorer, path, detection, threshold, smoothing, add_row, annotate_to=None):
  """Scores every frame of the video at `path`; `add_row(result, frame, time_s)` takes each
  face's FaceResult. `annotate_to`: where to write the annotated video (.mp4, same size and frame
  rate), or None. Returns {track id: [answer per frame it was seen]} and the number of frames."""
  import cv2

  video = cv2.VideoCapture(path)
  if not video.isOpened():
    raise folders.BadImage(path, "not a video OpenCV can read")
  fps = video.get(cv2.CAP_PROP_FPS) or 25.0
  tracker = scoring.Tracker(alpha=smoothing)
  writer, frame, per_track = None, 0, {}
  try:
    while True:
      ok, bgr = video.read()
      if not ok:
        break
      rgb = bgr[..., ::-1]
      results = scoring.score_image(scorer, rgb, detection, threshold, tracker)
      for r in results:
        add_row(r, frame, frame / fps)
        per_track.setdefault(r.track, []).append(r.answer)
      if annotate_to:
        if writer is None:
          size = (rgb.shape[1], rgb.shape[0])
          writer = cv2.VideoWriter(annotate_to, cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
        writer.write(np.ascontiguousarray(scoring.annotate(rgb, results)[..., ::-1]))
      frame += 1
  finally:
    video.release()
    if writer is not None:
      writer.release()
  if frame == 0:
    raise folders.BadImage(path, "no frames could be read")
  return per_track, frame
