"""Caffe's on-disk formats: the protobuf schema (caffe.proto) and helpers over its messages."""
