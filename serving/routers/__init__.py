"""The service's routes by concern; each module's `router(access)` builds its APIRouter with the
guards and body limits of one app (`serving.access.Access`), over module-level handlers."""
