from eval.tasks import TASKS_DIR

print(TASKS_DIR)
