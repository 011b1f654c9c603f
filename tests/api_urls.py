"""REST routes of the test project (filled by the REST API work)."""

urlpatterns: list = []
