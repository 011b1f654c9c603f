from django.contrib import admin

from django_agent_session.admin import register_session_admins

from .models import Order

admin.site.register(Order)
register_session_admins()  # ChatAgent, with its runs, events, usage and the live Stop action
