"""How a trained network is run over an image, apart from the networks and the methods (as MONAI keeps its
inferers): partial-diffusion reconstruction in `diffusion`, patch scanning and stitching in `patches`."""
