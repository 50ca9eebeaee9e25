"""Carbon and graphite-web configuration, the single source for every stack.

``carbon.conf`` is a template: ``${...}`` fields are filled by
:func:`dsat.tools.stack.render_carbon_conf` (the local ``make demo`` stack) and by
the container entry points, so both run the same Carbon.  The schemas and
aggregation files are used as they are; ``local_settings.py`` is graphite-web's
settings module (``GRAPHITE_SETTINGS_MODULE=dsat.carbon_conf.local_settings``) and
reads its paths from the environment.
"""
