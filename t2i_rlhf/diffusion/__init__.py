"""What generation, pre-training and fine-tuning share about the latent diffusion model: the VAE
codec between images and the UNet's latents, and the denoising target. No layer above it owns
these, so none of those three imports another for them."""
