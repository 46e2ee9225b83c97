# MedAnnot: one image for the web app (gunicorn), the Celery workers and beat.
#   docker compose build          (see docker-compose.yml)
# The CUDA build of torch is installed first, from the PyTorch index, so that
# `pip install .` finds torch==2.13.0 already satisfied instead of pulling PyPI's build.
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

# Production settings: DEBUG off (SECRET_KEY and ALLOWED_HOSTS come from the environment).
ENV DEBUG=false \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app

WORKDIR /app

# Heavy and rarely changing: its own layer, cached across code changes.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

# Non-root runtime user; the data folders (named volumes mount here and inherit the
# ownership on first use) belong to it.
RUN groupadd --system --gid 10001 medannot \
    && useradd --system --uid 10001 --gid medannot --home-dir /home/medannot \
       --create-home --shell /usr/sbin/nologin medannot \
    && mkdir -p /data/media /data/hf \
    && chown -R medannot:medannot /data

COPY . /app

# The project and its dependencies (torch already satisfied). PYTHONPATH=/app keeps the
# code imported from /app, so settings' BASE_DIR finds templates/ and static/ there.
RUN pip install . \
    && python -c "import torch; assert torch.__version__.split('+')[0] == '${TORCH_VERSION}', torch.__version__"

# Static files (vendored htmx/OpenSeadragon included) into STATIC_ROOT (/app/var/static).
# The key is a throwaway for this step only; the real one comes from the environment.
RUN SECRET_KEY=collectstatic-build-only DEBUG=0 python manage.py collectstatic --noinput

USER medannot

EXPOSE 8000

CMD ["gunicorn", "medannot.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "3", "--timeout", "120"]
