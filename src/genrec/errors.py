"""Exceptions genrec raises on bad input; each message names what was wrong and where."""


class GenrecError(Exception):
    """Base class for errors a user can fix."""


class ConfigError(GenrecError, ValueError):
    """A configuration value is missing, unknown or out of range."""


class DataFormatError(GenrecError, ValueError):
    """An input file is malformed; the message names the file and, where known, the line."""


class UnknownItemError(GenrecError, KeyError):
    """Item ids that the model's catalogue does not contain."""

    def __init__(self, unknown: list[str]):
        self.unknown = list(unknown)
        shown = ", ".join(self.unknown[:10]) + (" ..." if len(self.unknown) > 10 else "")
        super().__init__(f"{len(self.unknown)} item id(s) not in the model's catalogue: {shown}")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class ChecksumError(GenrecError):
    """A downloaded or supplied file does not match its published size or checksum."""


class CheckpointError(GenrecError, FileNotFoundError):
    """A checkpoint folder is missing, incomplete, corrupted (digest mismatch) or does not fit the model."""


class TrainingDiverged(GenrecError):
    """Training produced a non-finite loss (see ``train.nonfinite_loss``)."""
