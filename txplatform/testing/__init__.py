"""Test helpers for services and buses built on txplatform."""
