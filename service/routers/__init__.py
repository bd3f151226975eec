"""One APIRouter per domain, plus health and models."""
