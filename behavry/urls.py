from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.staticfiles.views import serve as static_serve
from django.urls import include, path, re_path

from behavry import views

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("login/", auth_views.LoginView.as_view(template_name="login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/v1/", include("behavry.api_urls")),
    path("", views.overview, name="overview"),
    # Daphne serves no static files; the console's few assets (CSS, vendored htmx) are served from
    # the app directories so the embedded default works offline with no extra server.
    re_path(r"^static/(?P<path>.*)$", static_serve, {"insecure": True}),
]

# /api/ clients parse JSON, so their 500 (a bug, always logged) keeps the one error shape too.
handler500 = "behavry.views.server_error"
