"""Real HTTP servers on loopback that speak the Jenkins and Rundeck APIs, for the tests."""
