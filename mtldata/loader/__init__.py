"""The PyTorch side: datasets over any reader, samplers, collate and Caffe's DataTransformer."""
