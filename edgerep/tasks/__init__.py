"""What "accuracy" means per task (DESIGN.md "Tasks"): detect (decode, NMS, mAP vs the reference and labels)."""
