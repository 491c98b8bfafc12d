"""Pure torch modules, built from MONAI blocks where MONAI has them."""
