"""Tasks: lens finding, substructure classification, regression, and any task or output kind defined in
a module of this package. Importing registers them all (and the task-model classes, so that checkpoints
load under Keras safe_mode): a new task or output kind is one file here, nothing else to edit.

Layer: above artifacts, beside simulate (the two never import each other). May import lensnet.core,
lensnet.data, lensnet.models and lensnet.artifacts.
"""

from lensnet.core.plugins import import_modules
from lensnet.tasks.base import BatchContext, Task, get_task_class, list_tasks, register_task, task_from_config
from lensnet.tasks.model import MetricInputs, SupervisedModel, TaskModel

import_modules(__name__)

__all__ = ["BatchContext", "MetricInputs", "SupervisedModel", "Task", "TaskModel", "get_task_class", "list_tasks",
           "register_task", "task_from_config"]
