"""User-facing errors: the CLI prints their message on one line and exits non-zero."""


class DdmopsError(Exception):
    """A problem with the user's input (params, files, URIs) rather than a bug."""


class ConfigError(DdmopsError):
    """A params file or override names an unknown key or holds a value of the wrong type."""


class DataError(DdmopsError):
    """An image, kernel or prepared data set cannot be used."""


class TrainingError(DdmopsError):
    """Training cannot go on (for example a non-finite loss)."""
