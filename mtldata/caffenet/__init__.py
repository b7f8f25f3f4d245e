"""Caffe nets and solvers run in torch: layers, the net graph, solvers, the runner, prototxt <-> tasks."""
