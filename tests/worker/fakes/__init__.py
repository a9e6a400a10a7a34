"""Stand-ins for GPU-only programs and libraries, faked at their documented boundary (see each module)."""
