from __future__ import annotations

from rest_framework.permissions import BasePermission

from accounts.roles import PersonRole, has_role


def _principal(request):
    return request.auth if request.auth is not None else request.user


class _HasRole(BasePermission):
    role = PersonRole.ADMIN
    message = "Your role does not allow this."

    def has_permission(self, request, view) -> bool:
        return has_role(_principal(request), self.role)


class IsViewer(_HasRole):
    role = PersonRole.VIEWER


class IsApprover(_HasRole):
    role = PersonRole.APPROVER


class IsAdmin(_HasRole):
    role = PersonRole.ADMIN


class ViewerReadsAdminWrites(BasePermission):
    """Safe methods need viewer; anything else needs admin."""

    message = "Your role does not allow this."

    def has_permission(self, request, view) -> bool:
        needed = PersonRole.VIEWER if request.method in ("GET", "HEAD", "OPTIONS") else PersonRole.ADMIN
        return has_role(_principal(request), needed)
