"""Create the demo user (and a few orders) if missing, and print the credentials."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from example_project.chat.models import Order

USERNAME, PASSWORD = "demo", "demo-password"


class Command(BaseCommand):
    help = "Create the demo user with sample orders and print its credentials."

    def handle(self, *args, **options):
        user, created = get_user_model().objects.get_or_create(
            username=USERNAME, defaults={"is_staff": True, "is_superuser": True})
        if created:
            user.set_password(PASSWORD)
            user.save()
        for number, item, status in [(1001, "Blue teapot", "shipped"),
                                     (1002, "Espresso cups (4)", "processing")]:
            Order.objects.get_or_create(number=number, defaults={
                "customer": user, "item": item, "status": status})
        self.stdout.write(f"Demo user: {USERNAME} / {PASSWORD}")
