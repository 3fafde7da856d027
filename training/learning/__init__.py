"""Learning: CGSchNet models, priors, exact derivatives/HVPs, losses, configs and the trainer."""
