"""The dq-ray map: a Panel + HoloViews + Datashader app over a run directory.

``data_store`` loads a run's Parquet once per process (only the columns a view asks for), ``pyramid`` is the
prepare step for corpora beyond memory, ``views`` builds the map, filters and tabs, and ``app`` serves them
(``dq-ray dashboard RUN``).
"""
