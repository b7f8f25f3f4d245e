"""Files on disk: list files, image decoding, records, manifests and the storage backends."""
