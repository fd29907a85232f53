"""Tasks built on hfcoop: a task's data, its generators and its runner live here, above the trainers they use.

- :mod:`hfcoop.tasks.text_to_equation`: GENERE's synthetic text-to-equation task (Sec. 3.2) and its black-box
  data generators.
"""
