"""Training math: the local loop, DP-SGD (Opacus), ghost clipping, OSFT's projection, orthogonal FedSVD. Pure torch and Opacus: no Flower."""
