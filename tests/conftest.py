"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from faultserver import FaultServer
from httpserver import FileServer


@pytest.fixture
async def fault_server() -> AsyncIterator[FaultServer]:
    """A started :class:`faultserver.FaultServer` on 127.0.0.1, closed after the test."""
    async with FaultServer() as server:
        yield server


@pytest.fixture
async def file_server() -> AsyncIterator[FileServer]:
    """A started :class:`httpserver.FileServer` (well-behaved, aiohttp.web) on 127.0.0.1."""
    async with FileServer() as server:
        yield server
