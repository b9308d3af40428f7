"""Running composites: loaded models, the composite, its scheduler and adapter families."""
