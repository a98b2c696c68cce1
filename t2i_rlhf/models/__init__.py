"""The shipped base models: a tiny Stable-Diffusion-format pipeline and a tiny CLIP."""
