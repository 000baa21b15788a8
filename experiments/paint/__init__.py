"""The paint server's parts, one job each (the command is `experiments.paint_server`).

`schema` declares the JSON API's request and response models, `session` holds the loaded
dissection and generator and computes, `app` wires them into FastAPI routes, and `apidocs`
renders the offline `/docs` page from the OpenAPI schema.
"""

import os

# The page's HTML, CSS and JS, and the /docs page's CSS and JS (served as /static/<name>).
STATIC_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "paint_static")
