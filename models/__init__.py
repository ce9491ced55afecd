"""Pure torch/numpy networks and detectors (no Prefect, no storage imports): the weights registry reads their files."""


class MissingWeightsError(FileNotFoundError):
    """A weights file is not where it must be put; the message names the path and where the file comes from."""
