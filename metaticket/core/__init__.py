"""The supermask core: supermask layers and masks, Slot Machines, fixed random masks, task BatchNorm."""
