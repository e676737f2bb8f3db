"""Calibration and validation data: image folders, ImageFolder trees, .npy/.npz arrays, detection sets (letterbox,
YOLO/COCO labels, Ultralytics data.yaml)."""
