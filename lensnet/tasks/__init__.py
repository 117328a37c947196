"""Tasks: lens finding, substructure classification, regression. Importing registers them."""

from lensnet.tasks import layers, lens_finding, regression, substructure  # noqa: F401  (registration)
from lensnet.tasks.base import Task, get_task_class, list_tasks, register_task

__all__ = ["Task", "get_task_class", "list_tasks", "register_task"]
