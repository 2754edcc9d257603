"""Networks assembled from the layers; importing this package registers them all."""
