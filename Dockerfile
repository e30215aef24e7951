# GPU image: CUDA torch comes from the base image, so pip keeps it (lipsync asks only for torch>=2.1).
# Build: docker build -t lipsync .   Run: docker run --gpus all -p 8000:8000 -v lipsync-models:/app/models lipsync
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    MODELS_DIR=/app/models \
    PRELOAD_MODELS=true \
    LOG_LEVEL=INFO

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
# onnxruntime-gpu gives SCRFD/ArcFace the CUDA provider. Both wheels install the same `onnxruntime`
# module, so the CPU one is removed first rather than overwritten.
RUN pip install --no-cache-dir ".[s3]" \
    && pip uninstall -y onnxruntime \
    && pip install --no-cache-dir onnxruntime-gpu

EXPOSE 8000
VOLUME ["/app/models"]
CMD ["lipsync", "serve", "--host", "0.0.0.0", "--port", "8000"]
