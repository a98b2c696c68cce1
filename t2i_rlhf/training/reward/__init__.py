"""The reward model r(x, z): frozen-backbone embeddings (backbone, views, margin) into a small MLP
(model), its data and perturbations (data), loss, metrics and training (train)."""
