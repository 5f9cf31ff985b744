"""Output formats (and the component builder), imported as ``provision.builders``."""
