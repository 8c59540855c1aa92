"""Export of reward models to ONNX (fp32 and int8) with a parity check against PyTorch."""
