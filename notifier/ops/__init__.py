"""Operations: logging, systemd notification, metrics."""
