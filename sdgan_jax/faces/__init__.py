"""Face geometry: detection, 68-point landmarks, alignment, masks, semantic maps, paste-back."""
