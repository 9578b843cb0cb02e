"""Deployment: export to ONNX (lowering, the int8 pass), running what was exported, and measured speed."""
