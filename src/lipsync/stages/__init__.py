"""Pipeline stages: pure, independently testable steps (loop planning, compositing, generation, ...)."""
