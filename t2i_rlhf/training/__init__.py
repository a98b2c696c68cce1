"""Training: `reward/` learns r(x, z) from labels; `finetune/` runs one Ray Train round of the
diffusion model on rewards. finetune reads rewards as numbers and never imports reward/."""
