"""``python -m dq_ray.demo OUT_DIR``: build the demo corpus (see :mod:`dq_ray.demo.corpus`)."""

from dq_ray.demo.corpus import main

main()
