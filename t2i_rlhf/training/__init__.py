"""Training: the reward model and the Ray Train fine-tuning loop of the diffusion model."""
