"""Where ClearML keeps helpers that training scripts import (``clearml.utilities``)."""
