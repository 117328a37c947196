"""Tasks: lens finding, substructure classification, regression. Importing registers them
(and the task-model classes, so that checkpoints load under Keras safe_mode)."""

from lensnet.tasks import layers, lens_finding, model, regression, substructure  # noqa: F401  (registration)
from lensnet.tasks.base import BatchContext, Task, get_task_class, list_tasks, register_task, task_from_config
from lensnet.tasks.model import MetricInputs, SupervisedModel, TaskModel

__all__ = ["BatchContext", "MetricInputs", "SupervisedModel", "Task", "TaskModel", "get_task_class", "list_tasks",
           "register_task", "task_from_config"]
