"""REST API routes under /api/v1/. Each feature issue adds its routers here."""

from django.urls import path

from behavry import views

app_name = "api"

urlpatterns = [
    path("whoami/", views.WhoAmIView.as_view(), name="whoami"),
]
